"""Train, fine-tune and validate HorNet: the command line of the original release, plus exact resume, bf16,
CPU runs, YAML configs and clear errors.

    torchrun --nproc_per_node 8 main.py --model hornet_tiny_7x7 --data_path /imagenet --output_dir out ...
    python main.py --model hornet_tiny_7x7 --eval true --resume ckpt.pth --data_path /imagenet
    python main.py --config configs/quickstart.yaml          # built-in data, trains on a laptop CPU

The flags are read, completed from the checkpoint and validated once by ``config.parse_run_args``; :func:`main`
turns them into typed objects and passes them down, phase by phase:

    run = setup_run(args)                  # process group, output check, logging, seeds  -> Run
    evaluate_on_sets(run)                  # --eval --eval_sets: test sets, and stop
    data = build_data(run)                 # validation and training sets                  -> Data
    net = build_model(run, ...)            # model, --finetune weights, EMA, DDP           -> Net
    evaluate_checkpoint(...)               # --eval: evaluate and stop
    train = build_train_data(run, data)    # resumable sampler, loader, steps per epoch    -> TrainData
    optim = build_optim(run, net, train)   # loss, optimizer, loss scaler, schedules       -> Optim
    ckpt.restore(...)                      # --resume / auto-resume (checkpoints.Checkpointer)
    train_loop(...)                        # epochs: train, evaluate, save, log
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset

import checkpoint_meta
import checkpoints
import dali_backend
import datasets
import engine
import eval_sets
import loaders
import output_check
import run_settings
import runlog
import utils
from config import (get_args_parser, parse_args, parse_run_args, recipe_batch_warning,  # noqa: F401  (main's names
                    str2bool, validate_args)                                            # for tests and tools)
from errors import UserError
from models.flops import count_flops
from models import CheckpointError, checkpoint_filter_fn, select_in1k_head_rows
from optim_factory import cosine_schedule, create_optimizer

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3   # a stop signal arrived; a checkpoint of the current step was written (requeue and resume)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)

_logger = logging.getLogger('hornet')


@dataclass
class Run:
    """This process's view of the run: the validated flags, who this process is, and the precision."""
    args: argparse.Namespace
    ds: utils.DistState
    amp_dtype: Optional[torch.dtype]  # autocast dtype under --use_amp; None: fp32


@dataclass
class Data:
    """The data sets and the class count the model is built for."""
    train: Optional[Dataset]  # None under --eval
    val: Optional[Dataset]    # None under --disable_eval (unless --eval)
    nb_classes: int


@dataclass
class Net:
    """The model in its three roles, and its EMA."""
    model: nn.Module          # what evaluation runs (DDP-wrapped when distributed)
    without_ddp: nn.Module    # the module whose weights are saved and loaded
    train_model: nn.Module    # what training runs (``model``, compiled under --compile)
    ema: Optional[ModelEmaV3]
    n_parameters: int


@dataclass
class TrainData:
    """The training stream: exact, resumable sampling cut to whole optimizer steps per epoch."""
    sampler: datasets.ResumableSampler
    loader: DataLoader
    steps_per_epoch: int      # optimizer steps per epoch
    mixup_fn: Optional[Mixup]


@dataclass
class Optim:
    """What one optimizer step needs besides the model: the loss, the optimizer, loss scaling and schedules."""
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr_fn: Callable[[int], float]
    wd_fn: Callable[[int], float]


def resolve_num_workers(args: argparse.Namespace, device: torch.device) -> None:
    """``--num_workers auto`` becomes a count (logged), here on the machine that trains: run_with_submitit
    parses the flags on another one."""
    if args.num_workers == 'auto':
        args.num_workers, why = utils.auto_num_workers(device.type)
        _logger.info('Data loading workers per process: %d (--num_workers auto: %s; --num_workers N to change)',
                     args.num_workers, why)


def setup_run(args: argparse.Namespace, inherited: Optional[run_settings.Inherited] = None) -> Run:
    """Start the process group; check that every output can be written (before any data is read); start logging
    and the seeds; pick the device settings and the precision."""
    ds = utils.init_distributed(args.device, args.dist_url, args.world_size, args.dist_on_itp)
    tb_dir = runlog.tensorboard_dir(args)
    problem = output_check.output_problem(args.output_dir, args.eval, tb_dir) if ds.is_main else None
    problem = utils.broadcast_from_main(problem)  # rank 0 alone writes and checks; every rank stops on its answer
    if problem:
        raise UserError(problem)
    runlog.setup_logging(args.output_dir or None)
    if inherited is not None and ds.is_main:
        inherited.log(_logger)
    if args.local_rank not in (-1, ds.local_rank):
        _logger.info('--local_rank %d ignored in favour of LOCAL_RANK=%d', args.local_rank, ds.local_rank)
    resolve_num_workers(args, ds.device)
    utils.set_intra_op_threads(args.threads, args.num_workers)
    torch.manual_seed(args.seed + ds.rank)
    random.seed(args.seed + ds.rank)
    np.random.seed(args.seed + ds.rank)
    if ds.device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = {'float16': torch.float16, 'bfloat16': torch.bfloat16}[args.amp_dtype] if args.use_amp else None
    return Run(args=args, ds=ds, amp_dtype=amp_dtype)


def build_data(run: Run) -> Data:
    """The validation set (unless --disable_eval) and the training set (unless --eval)."""
    args, ds = run.args, run.ds
    want_val = not args.disable_eval or args.eval
    dataset_val, nb_val = (None, None)
    resolve_num_workers(args, ds.device)  # done by setup_run; here too for callers of the phases alone
    loaders.log_loader_resources(args.num_workers, ds.rank, args.data_backend)
    if args.data_set == 'QUICKSTART' and ds.is_main:
        dataset_val, nb_val = datasets.build_dataset(False, args)  # rank 0 writes the generated images once
    utils.barrier()
    if want_val and dataset_val is None:
        dataset_val, nb_val = datasets.build_dataset(False, args)
    elif not want_val:
        dataset_val = None
    dataset_train = None
    nb_classes = nb_val
    if not args.eval:
        dataset_train, nb_classes = datasets.build_dataset(True, args)
    assert nb_classes is not None
    return Data(train=dataset_train, val=dataset_val, nb_classes=nb_classes)


def build_model(run: Run, nb_classes: int) -> Net:
    """Create the model (with --finetune weights), move and lay it out, count it, add the EMA, wrap it in DDP."""
    args, ds = run.args, run.ds
    hornet_kwargs = dict(layer_scale_init_value=args.layer_scale_init_value, head_init_scale=args.head_init_scale,
                         gf_impl=args.gf_impl) if args.model.startswith('hornet_') else {}
    model = timm.create_model(args.model, num_classes=nb_classes, drop_path_rate=args.drop_path, **hornet_kwargs)
    if args.finetune:
        sd = checkpoints.finetune_state_dict(args.finetune, args.model_key, args.model_prefix)
        sd = checkpoint_filter_fn(select_in1k_head_rows(sd, nb_classes, args.finetune), model, path=args.finetune)
        model.load_state_dict(sd, strict=True)
    model.to(ds.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.grad_checkpointing == 'full':
        model.set_grad_checkpointing(True)
    elif args.grad_checkpointing == 'selective':
        model.set_selective_checkpointing(True)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        gflops = count_flops(model, args.input_size) / 1e9
    except Exception as e:  # counting is informative only
        _logger.warning('FLOP count failed: %s', e)
        gflops = float('nan')
    _logger.info('Model %s: %.2fM params, %.3g GFLOPs (MACs) at %d px, %d classes', args.model,
                 n_parameters / 1e6, gflops, args.input_size, nb_classes)

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay,
                               device=torch.device('cpu') if args.model_ema_force_cpu else None)
    model_without_ddp = model
    if ds.distributed:
        # DDP lays its buckets out like the parameters: give them the strides their gradients will have
        changed = utils.match_param_strides_to_grads(model, args.input_size, channels_last=args.channels_last)
        _logger.debug('Parameters re-strided to their gradients\' layout: %s', changed)
        # gradient_as_bucket_view: gradients live in DDP's all-reduce buckets instead of beside them (one copy of
        # the gradients less per process, 0.8 GB for HorNet-L in fp32)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ds.device.index] if ds.device.type == 'cuda' else None, gradient_as_bucket_view=True)
    train_model = torch.compile(model) if args.compile else model
    return Net(model=model, without_ddp=model_without_ddp, train_model=train_model, ema=model_ema,
               n_parameters=n_parameters)


class Evaluator:
    """Exact evaluation of a data set: no padding, every sample counted once (a fresh loader per call)."""

    def __init__(self, run: Run, dataset: Optional[Dataset]):
        self.run = run
        self.dataset = dataset

    def loader(self) -> DataLoader:
        """--eval's loader: every image once over the processes (rank 0 alone under --dist_eval false),
        1.5 x --batch_size per process, uint8 batches normalised on the device."""
        args, device = self.run.args, self.run.ds.device
        assert self.dataset is not None
        return eval_sets.eval_loader(self.dataset, batch_size=int(1.5 * args.batch_size), num_workers=args.num_workers,
                                     pin_memory=args.pin_mem, dist_eval=args.dist_eval,
                                     wrap=lambda loader: loaders.wrap_loader(loader, args, device))

    def __call__(self, net: nn.Module, header: str = 'Test:', log_result: bool = True) -> Dict[str, float]:
        loader = self.loader()
        return engine.evaluate(net, loader, len(loader), amp_dtype=self.run.amp_dtype,
                               channels_last=self.run.args.channels_last, print_freq=self.run.args.print_freq,
                               header=header, log_result=log_result)


def eval_checkpoint(args: argparse.Namespace) -> Tuple[str, Optional[Dict[str, Any]]]:
    """--eval: the file of --resume (a run directory: its newest checkpoint) and its content; ('', None) when the
    weights are --finetune's, loaded with the model."""
    path = checkpoints.resolve_resume_path(args.resume) if args.resume else ''
    if path != args.resume:
        _logger.info('Evaluating %s, the newest checkpoint in %s', path, args.resume)
    return path, checkpoints.load_training_checkpoint(path) if path else None


def write_eval_json(output_dir: str, result: Dict[str, Any]) -> None:
    """eval.json in --output_dir (if given), after the result was printed: a failed write loses nothing."""
    if not output_dir:
        return
    out = os.path.join(output_dir, 'eval.json')
    try:
        os.makedirs(output_dir, exist_ok=True)
        checkpoints.write_json_atomic(out, result)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e} (the result is printed above; free disk "
                        f"space or fix the permissions of {output_dir})") from None
    _logger.info('Wrote %s', out)


def evaluate_checkpoint(run: Run, net: Net, evaluate: Evaluator) -> int:
    """--eval: the weights of --resume (or --finetune), and with --model_ema_eval its EMA; writes eval.json."""
    args = run.args
    path, ckpt = eval_checkpoint(args)
    if ckpt is not None:
        checkpoints.load_weights(net.without_ddp, ckpt, 'model', path, args.model)
        checkpoints.warn_other_classes(ckpt, path, getattr(evaluate.dataset, 'classes', None),
                                       f'the evaluation data (--data_set {args.data_set} '
                                       f'{args.eval_data_path or args.data_path})')
    stats = evaluate(net.model, log_result=False)
    result = {'checkpoint': path or args.finetune, 'model': args.model, 'input_size': args.input_size, **stats}
    ema_stats = None
    if ckpt is not None and args.model_ema_eval and ckpt.get('model_ema') is not None:
        checkpoints.load_weights(net.without_ddp, ckpt, 'model_ema', path, args.model)
        ema_stats = evaluate(net.model, header='Test (EMA):', log_result=False)
        result.update({f'{k}_ema': v for k, v in ema_stats.items()})
    if run.ds.is_main:
        print(engine.result_line(stats), flush=True)  # the result, on stdout, once; before any write can fail
        if ema_stats is not None:
            print(engine.result_line(ema_stats) + ' (EMA)', flush=True)
        result['sha256'] = checkpoint_meta.file_sha256(path or args.finetune)
        write_eval_json(args.output_dir, result)
    return EXIT_OK


def evaluate_on_sets(run: Run) -> int:
    """--eval --eval_sets: the weights (and with --model_ema_eval the EMA) on every test set, the model built and
    loaded once, with --eval's transform and exact loader; prints the table, then writes eval.json."""
    args = run.args
    specs = eval_sets.parse_eval_sets(args.eval_sets, args.eval_labels)  # layout errors before any work
    sets = eval_sets.build_eval_sets(specs, eval_sets.eval_transform(args))
    path, ckpt = eval_checkpoint(args)
    head = checkpoint_meta.head_classes(ckpt['model']) if ckpt is not None else None
    if head is not None and args.nb_classes not in (None, head):
        _logger.info('%s has a %d-class head: the model is built with it (not --nb_classes %d)', path, head,
                     args.nb_classes)
    nb_classes = head or args.nb_classes or 1000  # a 22K head (21841) is scored through its ImageNet-1K rows
    if ckpt is not None and nb_classes == 1000:
        checkpoints.warn_other_classes(ckpt, path, eval_sets.in1k_synsets(), 'the ImageNet-1K classes of --eval_sets')
    net = build_model(run, nb_classes)
    results: Dict[str, List[eval_sets.SetResult]] = {}
    for key in ('model', 'model_ema'):
        if key == 'model_ema' and not (ckpt is not None and args.model_ema_eval and ckpt.get(key) is not None):
            continue
        if ckpt is not None:
            checkpoints.load_weights(net.without_ddp, ckpt, key, path, args.model)
        results[key] = eval_sets.evaluate_sets(
            net.model, sets, num_classes=nb_classes, make_loader=lambda d: Evaluator(run, d).loader(),
            amp_dtype=run.amp_dtype, channels_last=args.channels_last, print_freq=args.print_freq)
    if run.ds.is_main:
        print(eval_sets.format_table(results['model']), flush=True)  # before any write can fail
        if 'model_ema' in results:
            print('EMA weights:\n' + eval_sets.format_table(results['model_ema']), flush=True)
        weights = path or args.finetune
        settings = eval_sets.eval_settings(args, num_classes=nb_classes)
        doc = eval_sets.results_json(results['model'], weights, checkpoint_meta.file_sha256(weights), settings,
                                     ema=results.get('model_ema'))
        write_eval_json(args.output_dir, doc)
    return EXIT_OK


def build_train_data(run: Run, data: Data) -> TrainData:
    """The training loader (exact, resumable sampling), the optimizer steps per epoch, and mixup/cutmix."""
    args, ds = run.args, run.ds
    assert data.train is not None
    sampler = datasets.ResumableSampler(len(data.train), ds.world_size, ds.rank, shuffle=True, seed=args.seed)
    if args.data_backend == 'dali':  # decode + augment in NVIDIA DALI (dali_backend.py)
        loader = dali_backend.build_dali_train_loader(data.train, sampler, args, ds.device)
    else:
        loader = datasets.build_loader(data.train, sampler, args.batch_size, args.num_workers, args.pin_mem,
                                       drop_last=True)
    loader = loaders.wrap_loader(loader, args, ds.device)  # uint8 -> normalised + erased on the device
    batches_per_epoch = sampler.per_replica // args.batch_size
    steps_per_epoch = batches_per_epoch // args.update_freq
    if steps_per_epoch == 0:
        raise UserError(f"one epoch has {sampler.per_replica} samples per process, fewer than --batch_size "
                        f"{args.batch_size} x --update_freq {args.update_freq}; lower them or add data")
    eff_batch = args.batch_size * args.update_freq * ds.world_size
    _logger.info('Effective batch %d = %d (batch) x %d (update_freq) x %d (processes); LR %.3g; %d optimizer '
                 'steps per epoch', eff_batch, args.batch_size, args.update_freq, ds.world_size, args.lr,
                 steps_per_epoch)
    if args.recipe_batch_size and eff_batch != args.recipe_batch_size:
        _logger.warning(recipe_batch_warning(eff_batch, args.recipe_batch_size, args.batch_size, args.update_freq,
                                             ds.world_size, args.lr))

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=data.nb_classes)
    return TrainData(sampler=sampler, loader=loader, steps_per_epoch=steps_per_epoch, mixup_fn=mixup_fn)


def build_optim(run: Run, net: Net, train: TrainData) -> Optim:
    """The loss (soft targets under mixup), the optimizer, the fp16 loss scaler and the LR/WD schedules."""
    args, ds = run.args, run.ds
    if train.mixup_fn is not None:
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing > 0.:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()

    optimizer = create_optimizer(net.without_ddp, args.opt, args.lr, args.weight_decay, opt_eps=args.opt_eps,
                                 opt_betas=args.opt_betas, momentum=args.momentum, layer_decay=args.layer_decay,
                                 fused=args.fused_adamw)
    scaler = torch.amp.GradScaler(ds.device.type, enabled=run.amp_dtype == torch.float16)
    lr_fn = cosine_schedule(args.lr, args.min_lr, args.epochs, train.steps_per_epoch,
                            warmup_epochs=args.warmup_epochs, warmup_steps=args.warmup_steps)
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    wd_fn = cosine_schedule(args.weight_decay, wd_end, args.epochs, train.steps_per_epoch)
    return Optim(criterion=criterion, optimizer=optimizer, scaler=scaler, lr_fn=lr_fn, wd_fn=wd_fn)


def train_loop(run: Run, net: Net, data: Data, train: TrainData, optim: Optim, ckpt: checkpoints.Checkpointer,
               evaluate: Evaluator) -> int:
    """Train from ``ckpt.state`` to --epochs: per epoch train, evaluate, keep the best, save, prune, log."""
    args, ds, state = run.args, run.ds, ckpt.state
    log = runlog.RunLog(args, optim.optimizer)
    step_cfg = engine.StepConfig(update_freq=args.update_freq, clip_grad=args.clip_grad, amp_dtype=run.amp_dtype,
                                 channels_last=args.channels_last, print_freq=args.print_freq,
                                 batch_size=args.batch_size, steps_per_epoch=train.steps_per_epoch,
                                 lr_fn=optim.lr_fn, wd_fn=optim.wd_fn)
    # SIGTERM/SIGUSR2 (a scheduler) and, when there is somewhere to save, Ctrl-C: save the step, stop
    utils.STOP.install((signal.SIGTERM, signal.SIGUSR2) + ((signal.SIGINT,) if ckpt.enabled else ()))
    _logger.info('Start training for %s; outputs in %s', runlog.plural(args.epochs, 'epoch'),
                 args.output_dir or '(not saved)')
    start_time = time.time()
    try:
        while state.epoch < args.epochs:
            epoch = state.epoch
            train.sampler.set_epoch(epoch, start=state.step_in_epoch * args.update_freq * args.batch_size)
            remaining = (train.steps_per_epoch - state.step_in_epoch) * args.update_freq
            limited = itertools.islice(train.loader, remaining)  # the epoch is cut to whole optimizer steps
            train_stats = engine.train_one_epoch(
                net.train_model, optim.criterion, limited, remaining, optim.optimizer, optim.scaler, state, step_cfg,
                model_ema=net.ema, mixup_fn=train.mixup_fn, save_fn=ckpt.save_preempt, on_step=log.on_step)
            log_stats: Dict[str, Any] = {f'train_{k}': v for k, v in train_stats.items()}
            if data.val is not None and not args.disable_eval:
                test_stats = evaluate(net.model)
                ckpt.save_if_best(test_stats['acc1'])
                _logger.info('Max accuracy: %.2f%%', state.max_accuracy)
                log_stats.update({f'test_{k}': v for k, v in test_stats.items()})
                if net.ema is not None and args.model_ema_eval:
                    ema_stats = evaluate(net.ema.module, header='Test (EMA):')
                    ckpt.save_if_best(ema_stats['acc1'], ema=True)
                    log_stats.update({f'test_{k}_ema': v for k, v in ema_stats.items()})
                log.test(epoch, test_stats)
            log_stats.update({'epoch': epoch, 'n_parameters': net.n_parameters})
            log.epoch(epoch, train_stats, log_stats)
            state.step_in_epoch = 0
            ckpt.end_of_epoch(epoch)
            log.write_log_txt(log_stats)
            state.epoch += 1
    except engine.TrainingInterrupted as e:
        if utils.STOP.ctrl_c:
            if ds.is_main:
                _logger.warning(ckpt.saved_on_ctrl_c_message())
            return EXIT_INTERRUPTED
        _logger.warning('%s; checkpoint saved: relaunch the same command to continue', e)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        if ds.is_main:
            _logger.warning(ckpt.interrupted_message())
        return EXIT_INTERRUPTED
    finally:
        utils.STOP.uninstall()
        log.close()
    _logger.info('Training time %s', time.strftime('%H:%M:%S', time.gmtime(time.time() - start_time)))
    if args.recipe_batch_size and args.batch_size * args.update_freq * ds.world_size != args.recipe_batch_size:
        _logger.warning(recipe_batch_warning(args.batch_size * args.update_freq * ds.world_size,
                                             args.recipe_batch_size, args.batch_size, args.update_freq,
                                             ds.world_size, args.lr))
    if args.output_dir and ds.is_main:
        where = os.path.abspath(args.output_dir)
        tb = f'; TensorBoard logs: tensorboard --logdir {os.path.abspath(log.tb_dir)}' if log.tb_dir else ''
        _logger.info('Checkpoints, log.txt and train.log are in %s%s', where, tb)
    return EXIT_OK


def main(args: argparse.Namespace, inherited: Optional[run_settings.Inherited] = None) -> int:
    """Run training or evaluation as described by validated ``args`` (``inherited``: what
    :func:`config.parse_run_args` took from the checkpoint, logged here). Returns an exit status."""
    run = setup_run(args, inherited)
    if args.eval and args.eval_sets:
        return evaluate_on_sets(run)
    data = build_data(run)
    net = build_model(run, data.nb_classes)
    evaluate = Evaluator(run, data.val)
    if args.eval:
        return evaluate_checkpoint(run, net, evaluate)
    train = build_train_data(run, data)
    optim = build_optim(run, net, train)
    state = engine.TrainState(epoch=args.start_epoch, global_step=args.start_epoch * train.steps_per_epoch)
    ckpt = checkpoints.Checkpointer(args, net.without_ddp, optim.optimizer, optim.scaler, state,
                                    ema_model=net.ema.module if net.ema is not None else None,
                                    class_names=getattr(data.train, 'classes', None))
    ckpt.restore(train.steps_per_epoch)
    if state.epoch >= args.epochs:  # a relaunch of a finished run: say where its results are, and stop
        _logger.info(ckpt.complete_message())
        return EXIT_OK
    return train_loop(run, net, data, train, optim, ckpt, evaluate)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback; Ctrl-C one line
    and exit status 130."""
    try:
        args, inherited = parse_run_args(argv)
        code = main(args, inherited)
        utils.barrier()  # ranks that finished apart reach destroy_process_group together (torch 2.5 + gloo hung)
        return code
    except (UserError, CheckpointError) as e:
        logging.getLogger('hornet').debug('user error', exc_info=True)
        sys.stderr.write(f"error: {e}\n")
        runlog.log_to_file(logging.ERROR, f"error: {e}")  # train.log ends with what ended the run
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # during set-up or --eval; the training loop reports its own
        message = 'Interrupted (Ctrl-C) before training started or during evaluation: nothing was saved'
        sys.stderr.write(message + '\n')
        runlog.log_to_file(logging.WARNING, message)
        return EXIT_INTERRUPTED
    except Exception:  # a bug: its traceback goes to the console as usual, and to train.log
        runlog.log_to_file(logging.ERROR, 'the run ended with an unexpected error:', exc_info=sys.exc_info())
        raise
    finally:
        try:
            utils.cleanup_distributed()
        except Exception:
            pass


if __name__ == '__main__':
    sys.exit(cli())
