"""What both gateway components ship beside the core: the runtime they share.

* `transport`: the one message-transport interface (and an in-memory one for tests);
  `ipc` implements it over Greengrass IPC (the tree's only module that imports `awsiot`), with
  the component configuration and its validated updates; `mqtt` implements it over MQTT 5
  (`awscrt`) for local runs and tests;
* `run`: the run loop (SIGTERM/SIGINT, restart on an applied configuration update);
* `features` and `model_runtime`: the incremental feature definition the model is trained on
  and the compiled-model runtime (numpy and ctypes); the ML pipeline imports them from here;
* `build`: the one function that makes a component's artifact.

It imports only the core (`iiot`) and never a component or the ML pipeline.
"""
