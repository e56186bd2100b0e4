"""Curation: label suggestions and issues (scoring), review pages, accepting suggestions, the
simulated reviewer and the automated loop's rounds."""
