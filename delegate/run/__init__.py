"""Running a task: the executor, child processes, task inputs and the log stream."""
