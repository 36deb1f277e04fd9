"""The bot at run time, outside HTTP: conversations answered through the policy, the model, actions."""
