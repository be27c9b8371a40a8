"""`python -m sensor_buffer`: the component's entry point.

Without arguments (the recipe's Run step) the buffer runs under Greengrass (`main.main`:
configuration and transport from IPC). With arguments it is the local command line that
`iiot edge` serves too, e.g. `python -m sensor_buffer run --factory F1 --broker mqtt://...`
starts the unpacked artifact against MQTT brokers, without Greengrass.
"""

import os
import sys

if len(sys.argv) > 1:
    from iiot import logs
    from sensor_buffer.cli import app

    logs.configure(os.environ.get("SENSOR_BUFFER_LOG_LEVEL", "INFO"))  # as main() does
    app(prog_name="python -m sensor_buffer")
else:
    from sensor_buffer.main import main

    main()
