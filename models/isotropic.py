from .hornet import HorNet as HorNetIsotropic
