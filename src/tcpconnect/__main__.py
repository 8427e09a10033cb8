from .cli import run_console_script

run_console_script()
