"""What serving needs besides the weights: the tokenizer and the profile a model was trained
with, found as the loader finds them (a trained model's own folder and manifest, or config.yml's
base model and training data). Imports no torch: a front-end on a remote model server
(bot.engine.remote) stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot import models
from bot.base_model import check_tokenizer, load_tokenizer, tokenizer_from_folder
from bot.config import Settings
from bot.data.profile import BotProfile, profile_of, trained_profile
from bot.data.project import validate


@dataclass
class Frontend:
    """What serving needs besides the weights: the tokenizer and profile the model was trained with."""

    tokenizer: object
    profile: BotProfile
    trained: models.TrainedModel | None
    base: str  # the base model, as the loader takes it


def load_frontend(settings: Settings, trained: models.TrainedModel | None) -> Frontend:
    """The tokenizer and profile of `trained` (its own folder and manifest), or of config.yml's
    base model and training data when `trained` is None. Loads no weights."""
    if trained is None:
        tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
        return Frontend(tokenizer, profile_of(validate(settings)), None, settings.base_model)
    base = settings.resolve_base(trained.manifest["base_model"])
    tokenizer = check_tokenizer(tokenizer_from_folder(trained.tokenizer_dir), base)
    profile = trained_profile(trained.folder, lambda: profile_of(validate(settings)))
    return Frontend(tokenizer, profile, trained, base)
