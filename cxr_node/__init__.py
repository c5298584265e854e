"""cxr-node: a DICOM node that brings chest X-ray AI results into a PACS."""

__version__ = "0.1.0"
