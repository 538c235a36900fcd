"""What an analysis produced, in memory and as JSON documents, read and written.

report.py        Report, LayerResult, LayerSpectra, StageTimes and the htsr.report/1 document
documents.py     checked JSON parsing and the canonical JSON writer every document uses
spectra_file.py  the eigenvalues saved beside a report (--save-spectra)
compare.py       two reports side by side, layer by layer
"""
