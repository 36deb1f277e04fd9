"""The reply policy: what the bot does next, one code path for serving, chat, evaluation, tuning and tests."""
