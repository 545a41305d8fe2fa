"""What writes an exported file: one module per format (`deploy.formats` names which), each
with `write(onnx_path, work_dir, metadata, feeds) -> path`, turning the traced fp32 ONNX graph
into the format's file at the plan's precision. Imported only when that format is exported."""
