"""Curation: label suggestions and issues (scoring), and the review pages built from them."""
