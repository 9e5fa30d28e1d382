"""Plain data read off the specifications (interfaces, constants, the anomaly catalog); imports nothing of ours."""
