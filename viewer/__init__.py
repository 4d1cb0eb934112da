"""Reading the Parquet outputs as a person: a text summary (`describe`) and an HTML contact sheet (`render_html`)."""
