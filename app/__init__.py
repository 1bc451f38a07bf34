"""The Streamlit app: entry point app/main.py, sidebar, state keys, cached model loading. Pages live in pages/."""
