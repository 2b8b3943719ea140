"""A whole model as one GGUF: the base GGUF's weights with a LoRA adapter merged in, as f32, f16 or q8_0.

The base GGUF already carries everything llama.cpp needs besides the weights (architecture,
tokenizer, chat template); this copies those fields with the `gguf` library's reader and writer and
re-encodes each weight matrix with its quantizer. No Hub checkpoint or converter script is needed.
1-D tensors (norms) stay f32, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.publishing.export.gguf_adapter import LoraTensors

# file type name -> (ggml tensor type, llama.cpp's general.file_type)
FILE_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}


def write_merged_gguf(base_gguf: Path, lora: LoraTensors | None, target: Path, file_type: str) -> Path:
    """`base_gguf` (+ `lora` merged into its weights) re-encoded as `file_type` (f32 | f16 | q8_0)."""
    import gguf

    tensor_type, llama_file_type = (
        getattr(gguf.GGMLQuantizationType, FILE_TYPES[file_type][0]),
        getattr(gguf.LlamaFileType, FILE_TYPES[file_type][1]),
    )
    reader = gguf.GGUFReader(str(base_gguf))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(target), arch=arch)
    for field in reader.fields.values():
        # GGUF.* are the reader's own fields; the writer adds the architecture; the file type changes.
        if field.name.startswith("GGUF.") or field.name in (
            gguf.Keys.General.ARCHITECTURE,
            gguf.Keys.General.FILE_TYPE,
        ):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    writer.add_file_type(llama_file_type)
    merged = set()
    for tensor in reader.tensors:
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if lora is not None and tensor.name in lora.pairs:
            weights = weights + lora.delta(tensor.name)
            merged.add(tensor.name)
        if weights.ndim == 1 or tensor_type == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor.name, weights)
        elif tensor_type == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(tensor.name, weights.astype(np.float16))
        else:
            writer.add_tensor(tensor.name, gguf.quants.quantize(weights, tensor_type), raw_dtype=tensor_type)
    missing = set(lora.pairs) - merged if lora is not None else set()
    if missing:
        raise ValueError(
            f"{base_gguf} has no tensors {sorted(missing)[:3]}...: the adapter was trained on another base"
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
