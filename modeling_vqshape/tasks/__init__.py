"""What the example scripts run: pre-training helpers (`training`), the linear-probe protocol and baselines
(`classification`, with the `evaluate` metric in `metrics`), fine-tuning (`finetuning`, with temperature scaling in
`calibration`), multi-teacher distillation (`distillation`, `teachers`) and autocast agreement (`precision`). These
modules never travel with a saved model."""
