"""PlantPulse: real-time predictive maintenance. This package holds the settings, the reading schema and the
CLI; the pipeline lives in the top-level packages `flows`, `connectors`, `models` and `sim`."""
