from aistack.cli import app

app(prog_name="aistack")
