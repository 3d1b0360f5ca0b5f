"""The Twilio example bot: ``python -m pipecat_rxdrain.examples.twilio_bot.bot`` or ``python examples/twilio_bot/bot.py``."""
