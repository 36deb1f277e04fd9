"""Custom actions of the starter bot (Wren of Kestrel Mobile), as a rasa-sdk action package:

    python -m rasa_sdk --actions actions      # port 5055

Each action reads its arguments from the tracker's slots (the bot sends the model's arguments
as slots and as entities of the latest message), looks them up in kestrel.json, and returns
the result as a custom payload (`json_message`): the bot puts it into the model's context as
the tool result, and the model writes the reply. Plain rasa-sdk code: nothing here knows about
the bot framework.
"""
