// The web page (web/) in a real browser: Debian's Chromium, driven by playwright-core (which
// downloads nothing: it is pointed at the installed binary), on the page's static build served with
// the cross-origin isolation headers. WebGPU there is Chromium's own, on SwiftShader's Vulkan.
// Checked: the page loads without console errors; a short training run lowers the loss on the CPU
// path and on WebGPU (which gives the CPU's losses); a question streams its answer and the page
// looks inside it; a checkpoint saved by train.ts answers in the page as generate.ts answers; bad
// input gets a message and breaks nothing. Screenshots of the panels go to artifacts/web/.
//
// Needs `apt-get install chromium` (CI's .ci/run installs it); NANOVLM_CHROMIUM=path points at
// another binary; NANOVLM_SKIP_BROWSER=1 skips this file on purpose.

import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { build, preview, type PreviewServer } from 'vite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readModelFolder } from '../node/model_folder.ts';
import { getTokenizer } from '../node/tokenizer.ts';
import { VisionLanguageModel } from '../vlm/vision_language_model.ts';
import { ASSETS, SMOLLM2_TOKENIZER } from './fixtures.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const CHROMIUM = process.env.NANOVLM_CHROMIUM ?? '/usr/lib/chromium/chromium';
const SKIP = process.env.NANOVLM_SKIP_BROWSER === '1';
if (!SKIP && !existsSync(CHROMIUM)) {
  const skip = 'or NANOVLM_SKIP_BROWSER=1 to skip the tests of the page';
  throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium (${skip})`);
}
// WebGPU in headless Chromium without a GPU: SwiftShader's Vulkan, which Chromium ships
const ARGS = [
  '--enable-unsafe-webgpu',
  '--enable-features=Vulkan',
  '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader',
  '--no-sandbox',
];
const ARTIFACTS = join(ROOT, 'artifacts', 'web');
const work = mkdtempSync(join(tmpdir(), 'web-test-'));

/** The page's state object (web/main.ts), as the tests read it. */
interface PageState {
  ready: boolean;
  training: boolean;
  losses: [number, number][];
  answers: string[];
  streamed: string[];
}
const state = (page: Page) => page.evaluate(() => (globalThis as unknown as { nanovlmPage: PageState }).nanovlmPage);

describe.skipIf(SKIP)('the web page in Chromium', () => {
  let server: PreviewServer;
  let browser: Browser;
  let url: string;
  let cpuLosses: number[] = [];

  beforeAll(async () => {
    const outDir = join(work, 'dist');
    const configFile = join(ROOT, 'web', 'vite.config.ts');
    await build({ configFile, logLevel: 'warn', build: { outDir } }); // the static build a web host serves
    const listen = { port: 0, host: '127.0.0.1' };
    server = await preview({ configFile, logLevel: 'warn', build: { outDir }, preview: listen });
    url = server.resolvedUrls!.local[0];
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
    mkdirSync(ARTIFACTS, { recursive: true });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    rmSync(work, { recursive: true, force: true });
  });

  /** Opens the page on a device and waits until the model is ready; `errors` collects console errors. */
  async function open(device: 'cpu' | 'webgpu') {
    const page = await browser.newPage({ viewport: { width: 1100, height: 1000 } });
    const errors: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(m.text());
    });
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${url}?device=${device}`);
    await page.waitForFunction(
      () =>
        (globalThis as unknown as { nanovlmPage: PageState }).nanovlmPage?.ready ||
        document.getElementById('train-message')?.textContent,
      null,
      { timeout: 90_000 },
    );
    expect(await page.textContent('#train-message')).toBe('');
    return { page, errors };
  }

  /** Clicks Train, waits for `steps` steps, pauses, and returns the training losses. */
  async function train(page: Page, steps: number, timeout: number): Promise<number[]> {
    await page.click('#train');
    await page.waitForFunction(
      (n) =>
        (globalThis as unknown as { nanovlmPage: PageState }).nanovlmPage.losses.length >= n ||
        document.getElementById('train-message')?.textContent,
      steps,
      { timeout },
    );
    await page.click('#pause');
    await page.waitForFunction(() => !(globalThis as unknown as { nanovlmPage: PageState }).nanovlmPage.training);
    expect(await page.textContent('#train-message')).toBe('');
    return (await state(page)).losses.map(([, loss]) => loss);
  }

  /** Asks a question about the chosen picture and waits for the whole answer. */
  async function ask(page: Page, question: string): Promise<string> {
    const before = (await state(page)).answers.length;
    await page.fill('#question', question);
    await page.click('#ask');
    await page.waitForFunction(
      (n) =>
        (globalThis as unknown as { nanovlmPage: PageState }).nanovlmPage.answers.length > n ||
        document.getElementById('ask-message')?.textContent,
      before,
      { timeout: 60_000 },
    );
    expect(await page.textContent('#ask-message')).toBe('');
    return (await state(page)).answers.at(-1)!;
  }

  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

  it('CPU path: loads without console errors and trains (the loss falls)', async () => {
    const { page, errors } = await open('cpu');
    const isolated = await page.evaluate(() => crossOriginIsolated);
    expect(isolated, 'COOP/COEP: SharedArrayBuffer for the kernel threads').toBe(true);
    expect(await page.textContent('#device')).toMatch(/CPU \(WebAssembly, \d+ threads?\)/);
    cpuLosses = await train(page, 40, 120_000);
    expect(cpuLosses[0]).toBeGreaterThan(4); // about ln(64): the untrained model's guess over the vocabulary
    expect(mean(cpuLosses.slice(-5))).toBeLessThan(mean(cpuLosses.slice(0, 5)) - 0.4);
    await page.locator('#train-panel').screenshot({ path: join(ARTIFACTS, 'train-cpu.png') });

    // Download checkpoint: the three files train.ts writes, which the scripts' loader reads
    await page.click('#save');
    await page.waitForFunction(() => document.querySelectorAll('#downloads a').length === 3);
    const saved = join(work, 'downloaded');
    mkdirSync(saved);
    for (const link of await page.locator('#downloads a').all()) {
      const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
      await download.saveAs(join(saved, download.suggestedFilename()));
    }
    expect(readdirSync(saved).sort()).toEqual(['config.json', 'model.safetensors', 'tokenizer.json']);
    const model = VisionLanguageModel.fromPretrained(readModelFolder(saved));
    const shown = await page.evaluate(
      () => (globalThis as unknown as { nanovlmPage: { model: { parameters: number } } }).nanovlmPage.model.parameters,
    );
    expect(model.numParameters()).toBe(shown);
    expect(getTokenizer(saved).vocabSize).toBeLessThanOrEqual(model.cfg.lm_vocab_size);
    expect(errors).toEqual([]);
    await page.close();
  }, 180_000);

  it('WebGPU (SwiftShader): trains in the page with the same losses as the CPU path', async () => {
    expect(cpuLosses.length, 'runs after the CPU test').toBeGreaterThan(0);
    const { page, errors } = await open('webgpu');
    expect(await page.textContent('#device')).toMatch(/^running on WebGPU: /);
    const losses = await train(page, 3, 150_000); // SwiftShader runs a step in about 15 s
    // same init, same batches: the first steps agree with the CPU's to float rounding
    for (let i = 0; i < 3; i++) expect(Math.abs(losses[i] - cpuLosses[i]), `step ${i + 1}`).toBeLessThan(1e-3);
    expect(losses.at(-1)!).toBeLessThan(losses[0]);
    await page.locator('#train-panel').screenshot({ path: join(ARTIFACTS, 'train-webgpu.png') });
    expect(errors).toEqual([]);
    await page.close();
  }, 240_000);

  it('a checkpoint saved by train.ts loads in the page, answers as generate.ts, streams and looks inside', async () => {
    const checkpoint = join(work, 'checkpoint');
    const tsx = (script: string, args: string[]) => {
      const command = ['--import', 'tsx', join(ROOT, script), ...args];
      const r = spawnSync(process.execPath, command, { cwd: ROOT, encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      return r.stdout;
    };
    // 150 steps: enough for answers that are words (about a third of them right)
    tsx('train.ts', [
      '--out',
      checkpoint,
      '--max_steps',
      '150',
      '--eval_interval',
      '150',
      '--builtin_val_size',
      '64',
      '--device',
      'cpu',
    ]);
    const image = join(ASSETS, 'shapes.png');
    const prompts = ['What color is the circle?', 'How many shapes are there?', 'Is the circle on the left?'];
    const expected = prompts.map((prompt) => {
      const out = tsx('generate.ts', [
        '--checkpoint',
        checkpoint,
        '--image',
        image,
        '--prompt',
        prompt,
        '--greedy',
        '--generations',
        '1',
        '--device',
        'cpu',
      ]);
      return out.match(/>> Generation 1: (.*)/)![1];
    });
    expect(
      expected.every((answer) => /^[a-z]+$/.test(answer)),
      expected.join(', '),
    ).toBe(true);

    const { page, errors } = await open('cpu');
    await page.setInputFiles('#checkpoint-files', checkpoint); // the folder, as the file picker gives it
    const loaded = () => document.getElementById('model-line')?.textContent?.startsWith('Model: checkpoint');
    await page.waitForFunction(loaded);
    await page.setInputFiles('#image-file', image);
    for (let i = 0; i < prompts.length; i++) expect(await ask(page, prompts[i]), prompts[i]).toBe(expected[i]);

    // a held-out picture: the answer streams in, one update per token, and the page looks inside it
    await page.click('#gallery canvas >> nth=1'); // its question goes into the box
    const answer = await ask(page, await page.inputValue('#question'));
    const { streamed } = await state(page);
    expect(streamed.length, 'one update per generated token').toBeGreaterThan(0);
    expect(streamed.at(-1)).toBe(answer);
    expect(await page.textContent('#answer')).toBe(answer);
    expect(await page.locator('#layers figure').count()).toBe(2); // one heatmap per decoder layer
    expect(await page.textContent('#grouping-caption')).toContain('(4 -> 1)');
    for (const panel of ['ask', 'inside']) {
      await page.locator(`#${panel}-panel`).screenshot({ path: join(ARTIFACTS, `${panel}.png`) });
    }
    expect(errors).toEqual([]);
    await page.close();
  }, 240_000);

  it('bad input: a message in the page, and the page goes on working', async () => {
    const { page, errors } = await open('cpu');
    const notImage = join(work, 'notes.png');
    writeFileSync(notImage, 'these are notes, not a picture');
    await page.setInputFiles('#image-file', notImage);
    await page.waitForFunction(() => document.getElementById('ask-message')?.textContent);
    const notRead = 'notes.png is not an image this browser can read: choose a PNG or JPEG file';
    expect(await page.textContent('#ask-message')).toBe(notRead);

    const noConfig = join(work, 'no-config');
    mkdirSync(noConfig);
    writeFileSync(join(noConfig, 'tokenizer.json'), '{}');
    await page.setInputFiles('#checkpoint-files', noConfig);
    await page.waitForFunction(() => document.getElementById('ask-message')?.textContent?.includes('config.json'));
    expect(await page.textContent('#ask-message')).toBe(
      'no-config has no config.json: drop a checkpoint folder (config.json, model.safetensors, tokenizer.json)',
    );

    // a tokenizer of 49152 tokens with the default model's 64-word vocabulary
    const misfit = join(work, 'misfit');
    mkdirSync(misfit);
    for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(work, 'checkpoint', f), join(misfit, f));
    copyFileSync(join(SMOLLM2_TOKENIZER, 'tokenizer.json'), join(misfit, 'tokenizer.json'));
    await page.setInputFiles('#checkpoint-files', misfit);
    await page.waitForFunction(() => document.getElementById('ask-message')?.textContent?.includes('tokenizer'));
    expect(await page.textContent('#ask-message')).toBe(
      "the tokenizer has 49152 tokens but the model's vocabulary has 64: this tokenizer.json does not fit the model " +
        '(add the one it was trained with)',
    );

    // nothing was replaced: the page's own model still answers, about a drawing too
    expect(await page.textContent('#model-line')).toMatch(/^Model: the default model/);
    await page.click('#gallery canvas >> nth=0');
    await ask(page, 'How many shapes are there?');
    const box = (await page.locator('#draw').boundingBox())!;
    await page.mouse.move(box.x + 30, box.y + 30);
    await page.mouse.down();
    await page.mouse.move(box.x + 70, box.y + 60, { steps: 8 });
    await page.mouse.up();
    expect(await page.locator('.gallery canvas.chosen').count(), 'the drawing is the chosen picture').toBe(0);
    await ask(page, 'What shape is the red object?');
    expect(errors).toEqual([]);
    await page.close();
  }, 120_000);
});
