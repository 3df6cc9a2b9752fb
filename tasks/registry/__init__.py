"""MLflow: tracking, the models (pyfunc, no pickle), registration, the promotion gate, promote and rollback."""
