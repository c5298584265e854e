"""The DICOM network edge: statuses, presentation contexts, SCP handlers and SCU delivery."""
