"""The analysis side of cxr-node: Celery tasks, pixels, models, Grad-CAM and encoders."""
