pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.chain",
    "tests.fixtures.facilitator",
    "tests.fixtures.resource_server",
    "tests.fixtures.generation",
]
