"""Training: stage A (`align`), stage B (`reward`, sampling in `rollout`, DRaFT in `draft`, UNet
LoRA in `lora`), what both stages share (`common`), the preference model (`preference`, reading
logs in `click_log`) and training curves (`curves`)."""
