// A kernel worker thread: it waits for its start message (the compiled
// module, the shared memory, the control block), then serves kernel calls
// until the process ends (see pool.ts).

import { onParentMessage } from '../threads.ts';
import { serve, type WorkerInit } from './pool.ts';

onParentMessage<WorkerInit>(serve);
