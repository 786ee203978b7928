"""The commands that run Prefect flows or talk to a Prefect server (`run`, `serve`,
`trigger`, `matrix`, `data push`). Each module registers on `trtflow.cli.app.app`
when the CLI loads it through the `trtflow.commands` entry point group."""
