"""The reports: the Andon board (report.md / report.html) and its sections, the certification's report,
and the renderer that writes their blocks as Markdown or as one self-contained HTML page."""
