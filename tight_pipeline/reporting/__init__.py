"""What people look at: MLflow tracking (``tracking``), contact sheets (``sheets``) and plots (``plots``)."""
