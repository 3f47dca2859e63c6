"""The auditor's evidence pack: the control mapping (data, ``controls.json``), its export as
OSCAL assessment results with an in-toto manifest in a DSSE envelope, and its offline check."""
