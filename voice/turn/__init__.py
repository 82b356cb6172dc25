"""Turn-taking: when the agent speaks, waits, acknowledges or yields."""
