import { benchLoading, fashionRows, photoRows } from '../bench/data.ts';
import { getTokenizer } from '../data/tokenizer.ts';
const tok = getTokenizer('test/fixtures/tokenizers/smollm2');
let t = performance.now();
const f = fashionRows(20000); console.log('fashion rows', (performance.now() - t).toFixed(0), 'ms', f[0].image.length, 'bytes');
console.log(await benchLoading('fashion', f, 500, tok, { batchSize: 32, imgSize: 64, batches: 40 }));
t = performance.now();
const p = photoRows(400); console.log('photo rows', (performance.now() - t).toFixed(0), 'ms', p[0].image.length, 'bytes');
console.log(await benchLoading('cauldron', p, 100, tok, { batchSize: 8, imgSize: 224, batches: 20 }));
