"""`python -m sensor_buffer`: the Greengrass entry point (see main.main)."""

from sensor_buffer.main import main

main()
