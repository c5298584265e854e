"""Sending results to destinations, one module per kind: ``dicom`` (C-STORE SCU), ``dicomweb``
(STOW-RS), ``hl7`` (ORU^R01 over MLLP). ``policy`` holds what they share: how a failure is
classified (retry the destination later, refuse the destination, refuse this study)."""
