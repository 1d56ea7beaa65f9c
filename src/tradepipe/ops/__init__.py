"""Operations (R8.3-R8.6): metrics, alert rules, the live dashboard, the Telegram bot."""
