from aistack.cli import run

run()
