"""Validation shared by every modality: the GX checkpoint, the stop/quarantine policy, the drift reference, the report and Data Docs."""
