"""What the bot made up, counted in every conversation test run: grounded values sent that
nobody gave, and names nobody gave."""

from __future__ import annotations

from bot.conversations.events import action_executed, bot_message, user_message
from bot.data.schema import Action, Argument
from bot.evaluation.invented import invented_names, invented_values

ACTIONS = {
    "get_bill": Action(arguments={"account_id": Argument(source="conversation")}),
    "verify_customer": Action(arguments={"account_id": Argument(source="conversation"), "postcode": Argument()}),
}


def test_a_value_sent_before_anyone_gave_it_is_counted():
    given = [user_message("my account is 51234567"), action_executed("get_bill", {"account_id": "51234567"}, {})]
    assert invented_values(given, ACTIONS) == []
    made_up = [user_message("my bill please"), action_executed("get_bill", {"account_id": "11234567"}, {})]
    assert invented_values(made_up, ACTIONS) == ['get_bill account_id="11234567"']
    # a value an earlier action returned is held too; one given only later is not
    from_result = [
        user_message("hi"),
        action_executed("verify_customer", {"account_id": "51234567", "postcode": "x"}, {"account_id": "40288163"}),
        action_executed("get_bill", {"account_id": "40288163"}, {}),
    ]
    assert invented_values(from_result, ACTIONS) == ['verify_customer account_id="51234567"']


def test_a_name_nobody_gave_is_counted():
    events = [user_message("hi its 51234567"), bot_message("Thanks, Marcus. What's your postcode?")]
    assert invented_names(events) == ["Marcus"]
    given = [
        user_message("hi"),
        action_executed("verify_customer", {}, {"verified": True, "first_name": "Priya"}),
        bot_message("Thanks, Priya. Your bill is £30."),
        bot_message("Hi, Wren here. Thanks, that's all sorted."),
    ]
    assert invented_names(given, known="Wren Kestrel Mobile") == []
