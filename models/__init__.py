"""Model adapters and loaders: small interfaces over ASR, LLM, TTS, VAD and native speech models."""
