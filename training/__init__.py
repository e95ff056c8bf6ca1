"""Training: TRL recipes with LoRA, evaluation, checkpoints, the registry and Hub publishing.

    training.sft.train_sft / training.dpo.train_dpo / training.kto.train_kto   the recipes
    training.results.TrainResult                                               what they return
    training.config.TrainingSettings, load_training_settings                  configs/training.toml
    training.eval                      heldout_loss, preference_accuracy, label_reward_gap, task_accuracy
    training.checkpoint.build_checkpoint                                       merge + save + manifest + card
    training.manifest, training.registry (torch-free)                          verify, LocalRegistry
    training.hub.HubPublisher                                                  Hugging Face Hub
    training.lora                      ensure_lora, lora_config, adapter_state_dict, ...

Nothing is imported here, so `import training.manifest` stays torch-free.
"""
