"""A module that takes a second to import: a task server's preload that a test's task arrives during."""

import time

time.sleep(1.0)
