"""DICOM encoders for analysis results: TID 1500 SR and Secondary Capture heatmap."""
