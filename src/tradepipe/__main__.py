from tradepipe.cli import app

app(prog_name="tradepipe")
