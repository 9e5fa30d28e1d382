"""The forensics report: decoded WMI calls turned into findings (who did what to whom,
with the MITRE ATT&CK technique and the frames that prove it), for people (HTML) and
for SIEMs (ECS JSON lines). Reads the pipeline's records, never bytes."""
