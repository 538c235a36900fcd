"""What an analysis produced, in memory and as JSON documents, read and written.

report.py        Report, LayerResult, LayerSpectra, StageTimes, RunRecord (what a run used) and the
                 htsr.report/1 document, its settings and summary typed (ReportSettings, ReportSummary)
documents.py     checked JSON parsing and the canonical JSON writer every document uses
spectra_file.py  the eigenvalues saved beside a report (--save-spectra)
compare.py       two reports side by side, layer by layer
"""
