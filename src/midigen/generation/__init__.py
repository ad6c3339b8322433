"""Generation: continuing prompts with a trained model, and the samples it writes."""
