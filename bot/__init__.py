"""A contact-center chatbot framework with fine-tuning built in."""

__version__ = "0.1.0"
