"""Quantizing a checkpoint by a bits plan: round-to-nearest, written as compressed-tensors.

    from htsr_cli.quantize import QuantizeSettings, quantize_checkpoint
    record = quantize_checkpoint("./llama", "./llama-w4", QuantizeSettings(plan=Path("bits.json")))

rtn.py         the round-to-nearest grids and codes: pure tensor functions
compressed.py  compressed-tensors' pack-quantized parts and quantization_config
quantize.py    the pipeline and the `htsr.quantize/1` record (the output written by pruning/layout.py)
"""

from htsr_cli.quantize.quantize import RECORD, SCHEMA, QuantizeSettings, quantize_checkpoint

__all__ = ["RECORD", "SCHEMA", "QuantizeSettings", "quantize_checkpoint"]
