"""Custom actions of the Lumen Energy brand (Ember), as a rasa-sdk action package, run from the
brand's folder on its own port (endpoints.yml's action_endpoint, 5056; Kestrel's is 5055):

    python -m rasa_sdk --actions actions -p 5056

Each action reads its arguments from the tracker's slots (the bot sends the model's arguments
as slots and as entities of the latest message), looks them up in lumen.json, and returns
the result as a custom payload (`json_message`): the bot puts it into the model's context as
the tool result, and the model writes the reply. Plain rasa-sdk code: nothing here knows about
the bot framework.
"""
