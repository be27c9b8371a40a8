"""`python -m opcua_collector`: under Greengrass without arguments, `run ...` against a broker."""

from opcua_collector.main import main

main()
