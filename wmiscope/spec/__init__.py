"""The neutral spec layer: plain data read off the specifications (MS-WMI, MS-DCOM,
MS-OAUT, MS-ERREF) and the anomaly catalog, importing nothing of ours, read by both
`formats/` and `dissectors/` and exported whole as JSON (`interfaces.to_json()`) for
generators outside Python."""
